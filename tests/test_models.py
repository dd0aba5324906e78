import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hw2.config import Config
from hw2.errors import ConfigError
from hw2.models import BottleneckBlock, ResNet, StandardBlock, count_parameters


@pytest.mark.parametrize("version,size,depth,params", [
    (1, 3, 20, 0.27e6), (1, 5, 32, 0.46e6), (1, 7, 44, 0.66e6), (1, 9, 56, 0.85e6), (1, 18, 110, 1.7e6),
    (2, 18, 164, 1.7e6),
])
def test_depth_and_parameter_counts_match_he_et_al(version, size, depth, params):
    model = ResNet(version, size)
    assert model.depth == depth
    assert abs(count_parameters(model) - params) / params < 0.03, count_parameters(model)


@pytest.mark.parametrize("version", [1, 2])
def test_forward_gives_logits_for_each_class(version):
    model = ResNet(version, 1, num_classes=7)
    out = model(torch.randn(4, 3, 32, 32))
    assert out.shape == (4, 7)
    assert not any(isinstance(m, (nn.Softmax, nn.LogSoftmax)) for m in model.modules())
    assert not torch.allclose(out.sum(1), torch.ones(4)), "logits, not probabilities"


def test_output_layer_width_follows_the_version():
    assert ResNet(1, 1).output_layer.fc.in_features == 64
    assert ResNet(2, 1).output_layer.fc.in_features == 256
    assert ResNet(1, 1, first_num_filters=8).output_layer.fc.in_features == 32


def test_stage_output_shapes():
    for version, widths in ((1, [16, 32, 64]), (2, [64, 128, 256])):
        model = ResNet(version, 2)
        x = model.start_layer(torch.randn(2, 3, 32, 32))
        for stack, width, size in zip(model.stack_layers, widths, [32, 16, 8]):
            x = stack(x)
            assert x.shape == (2, width, size, size)


def test_standard_block_ends_with_relu_and_bottleneck_block_does_not():
    torch.manual_seed(0)
    x = torch.randn(8, 64, 8, 8)
    assert (StandardBlock(64, 64, 1)(x) >= 0).all()
    pre = BottleneckBlock(64, 16, 1)
    assert (pre(x) < 0).any(), "no ReLU after the addition in version 2"
    assert pre.projection_shortcut is None and BottleneckBlock(16, 16, 1).projection_shortcut is not None


def test_bottleneck_keeps_its_identity_input_intact():
    x = torch.randn(2, 64, 8, 8)
    before = x.clone()
    BottleneckBlock(64, 16, 1)(x)
    assert torch.equal(x, before)


def test_batchnorm_running_statistics_average_over_batches():
    """TensorFlow's decay 0.997 copied as PyTorch momentum would make the running mean follow the last
    batch alone; here it averages batches of mean 0 and 10 to about 5."""
    model = ResNet(1, 1)
    bn = model.start_layer[1]
    conv = model.start_layer[0]
    model.train()
    with torch.no_grad():
        for i in range(60):
            x = torch.full((4, 3, 32, 32), 10.0 * (i % 2)) + torch.randn(4, 3, 32, 32) * 0.01
            model(x)
    out_mean = conv(torch.full((1, 3, 32, 32), 5.0)).mean((0, 2, 3))
    assert torch.allclose(bn.running_mean, out_mean, atol=0.35 * out_mean.abs().max().item())
    assert all(m.momentum <= 0.1 for m in model.modules() if isinstance(m, nn.BatchNorm2d))


def test_printed_structure_uses_the_assignment_names():
    text = str(ResNet(1, 2))
    for name in ("start_layer", "stack_layers", "StandardBlock", "projection_shortcut", "output_layer"):
        assert name in text
    assert "BottleneckBlock" in str(ResNet(2, 1))


@pytest.mark.parametrize("kwargs,field", [({"resnet_version": 3, "resnet_size": 1}, "resnet_version"),
                                          ({"resnet_version": 1, "resnet_size": 0}, "resnet_size")])
def test_invalid_arguments_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        ResNet(**kwargs)


def test_standard_vs_bottleneck_block_parameter_count():
    """The assignment's question 3: a standard block at 32 channels against a bottleneck at 128."""
    standard = StandardBlock(32, 32, 1)
    bottleneck = BottleneckBlock(128, 32, 1)
    assert count_parameters(standard) == 2 * (3 * 3 * 32 * 32) + 2 * 2 * 32
    assert count_parameters(bottleneck) == (128 * 32 + 9 * 32 * 32 + 32 * 128) + 2 * (128 + 32 + 32)


@pytest.mark.parametrize("size,params", [(3, 269_722), (5, 464_154), (7, 658_586), (9, 853_018), (18, 1_727_962),
                                         (200, 19_421_274)])
def test_identity_shortcuts_have_exactly_the_papers_parameter_counts(size, params):
    """He et al.'s Table 6 (0.27M ... 19.4M for ResNet-20 ... ResNet-1202), to the parameter as
    akamaster/pytorch_resnet_cifar10 counts them. On the meta device: no memory for ResNet-1202's weights."""
    with torch.device("meta"):
        model = ResNet(1, size, shortcut="identity")
    assert count_parameters(model) == params
    assert not any(isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) for m in model.modules())


def test_identity_shortcut_subsamples_and_pads_half_the_new_channels_on_each_side():
    block = StandardBlock(16, 32, stride=2, shortcut="identity")
    x = torch.randn(2, 16, 8, 8)
    shortcut = block.zero_pad_shortcut(x)
    torch.testing.assert_close(shortcut, F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, 8, 8)), rtol=0, atol=0)
    assert shortcut.shape == (2, 32, 4, 4) and (shortcut[:, :8] == 0).all() and (shortcut[:, 24:] == 0).all()
    assert block.projection_shortcut is None and count_parameters(block.zero_pad_shortcut) == 0
    assert StandardBlock(16, 16, 1, shortcut="identity").zero_pad_shortcut is None
    assert block(x).shape == (2, 32, 4, 4)


def test_identity_shortcut_is_version_1s_only():
    with pytest.raises(ValueError, match=r"shortcut must be 'projection' for resnet_version 2 \(zero padding is "
                                         r"version 1's option\)"):
        ResNet(2, 1, shortcut="identity")
    with pytest.raises(ConfigError, match="shortcut must be 'projection' for resnet_version 2"):
        Config(resnet_version=2, shortcut="identity")
    with pytest.raises(ConfigError, match="shortcut must be 'projection' or 'identity', got 'zero'"):
        Config(shortcut="zero")
