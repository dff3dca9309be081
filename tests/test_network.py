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
