import torch

from fm2s.network import FM2SNet


def test_shape_is_kept_for_odd_sizes():
    net = FM2SNet(2, 5, 3, 5)
    assert net(torch.zeros(3, 2, 17, 23)).shape == (3, 2, 17, 23)


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
