import torch

from fm2s.network import FM2SNet


def test_shape_and_alignment_are_kept_for_odd_sizes():
    """Odd sizes come out in the same shape and unshifted: away from its edges (the halo),
    a crop's output is the whole image's output at the same pixels."""
    torch.manual_seed(0)
    net = FM2SNet(2, 5, 3, 5).eval()
    x = torch.rand(3, 2, 31, 37)
    with torch.no_grad():
        whole = net(x)
        part = net(x[..., 4:27, 5:34])  # 23 x 29
    assert whole.shape == x.shape and part.shape == (3, 2, 23, 29)
    h = net.halo
    torch.testing.assert_close(part[..., h:-h, h:-h], whole[..., 4 + h:27 - h, 5 + h:34 - h],
                               rtol=0, atol=1e-6)
    assert not torch.allclose(part[..., :h, :], whole[..., 4:4 + h, 5:34], atol=1e-6)


def test_halo_is_the_receptive_field():
    for kernels in [(3, 3, 3), (5, 3, 5)]:
        net = FM2SNet(1, *kernels).eval()
        halo = net.halo
        assert halo == sum(k // 2 for k in kernels)
        x = torch.rand(1, 1, 41, 41)
        y0 = net(x)
        x2 = x.clone()
        x2[0, 0, 20, 20] += 1.0
        changed = (net(x2) - y0).abs()[0, 0] > 0
        rows, cols = torch.nonzero(changed, as_tuple=True)
        assert rows.min() == 20 - halo and rows.max() == 20 + halo
        assert cols.min() == 20 - halo and cols.max() == 20 + halo


def test_parameter_count_is_tiny():
    assert sum(p.numel() for p in FM2SNet(2, 3, 3, 3).parameters()) < 4000


def test_in_place_activation_changes_no_value_or_gradient():
    """The activations work in place (faster training); with fresh tensors instead, the
    output and every gradient are the same, bit for bit."""
    torch.manual_seed(0)
    a = FM2SNet(2, 5, 3, 5)
    b = FM2SNet(2, 5, 3, 5)
    b.load_state_dict(a.state_dict())
    b.act = torch.nn.LeakyReLU(negative_slope=a.act.negative_slope)
    assert a.act.inplace and not b.act.inplace
    x = torch.randn(2, 2, 17, 23)
    outs = []
    for net in (a, b):
        out = net(x)
        (out ** 2).mean().backward()
        outs.append(out)
    assert torch.equal(outs[0], outs[1])
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa.grad, pb.grad)
