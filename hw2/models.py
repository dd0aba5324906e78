"""ResNet for CIFAR-10, as He et al. define it.

Version 1 ("Deep Residual Learning", 2015; Fig. 4(a) of "Identity Mappings"): standard blocks
conv3x3-BN-ReLU-conv3x3-BN, add, ReLU; 6n+2 layers (n=3: ResNet-20, n=18: ResNet-110).
Version 2 ("Identity Mappings", 2016, Fig. 4(e)): full pre-activation bottleneck blocks
BN-ReLU-conv1x1, BN-ReLU-conv3x3, BN-ReLU-conv1x1, add, nothing after the add; 9n+2 layers
(n=18: ResNet-164). n is `resnet_size`, the number of blocks in each of the three stacks.

Where a version 1 stack changes the shape, the shortcut is a 1x1 projection with BN (`shortcut="projection"`,
He et al.'s option B, as the assignment's code) or the input subsampled and padded with zero channels
(`"identity"`, option A, which He et al.'s CIFAR-10 networks use: no parameters, so exactly the paper's counts).

BatchNorm keeps PyTorch's momentum of 0.1 (fb.resnet.torch, which He et al.'s CIFAR models were trained
with, uses the same); TensorFlow's decay of 0.997 would be momentum 0.003 here, and 0.997 itself would
make the running statistics follow the last batch alone.
"""
import torch
import torch.nn.functional as F
from torch import nn

SHORTCUTS = ("projection", "identity")
ARCHITECTURE = ("resnet_version", "resnet_size", "first_num_filters", "shortcut", "num_classes")  # a run's network


def architecture_problems(resnet_version, resnet_size, shortcut):
    """[(parameter, what is wrong, its value)] for these architecture values; empty when they make a network."""
    rules = [("resnet_version", resnet_version, resnet_version in (1, 2), "must be 1 or 2"),
             ("resnet_size", resnet_size, type(resnet_size) is int and resnet_size >= 1, "must be an integer >= 1"),
             ("shortcut", shortcut, shortcut in SHORTCUTS, "must be 'projection' or 'identity'"),
             ("shortcut", shortcut, shortcut != "identity" or resnet_version == 1,
              "must be 'projection' for resnet_version 2 (zero padding is version 1's option)")]
    return [(name, rule, value) for name, value, ok, rule in rules if not ok]


def conv3x3(in_channels, out_channels, stride=1):
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


def conv1x1(in_channels, out_channels, stride=1):
    return nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)


class ZeroPadShortcut(nn.Module):
    """He et al.'s option A: the input subsampled with the block's stride and padded with zero channels, half
    of them before the input's and half after, as akamaster/pytorch_resnet_cifar10 (the widely used PyTorch
    version, whose published weights depend on where the input's channels land) does."""

    def __init__(self, in_channels, out_channels, stride):
        super().__init__()
        pad = out_channels - in_channels
        self.stride, self.before, self.after = stride, pad // 2, pad - pad // 2

    def forward(self, x):
        return F.pad(x[:, :, ::self.stride, ::self.stride], (0, 0, 0, 0, self.before, self.after))


class StandardBlock(nn.Module):
    """Version 1 block. Where the shape changes, a 1x1 projection with BN (shortcut "projection", He et al.'s
    option B) or zero padding (shortcut "identity", option A)."""

    expansion = 1

    def __init__(self, in_channels, filters, stride, shortcut="projection"):
        super().__init__()
        self.conv1 = conv3x3(in_channels, filters, stride)
        self.bn1 = nn.BatchNorm2d(filters)
        self.conv2 = conv3x3(filters, filters)
        self.bn2 = nn.BatchNorm2d(filters)
        self.relu = nn.ReLU(inplace=True)
        # two attributes rather than one, so that the projection's weights keep the names older checkpoints have
        self.projection_shortcut = self.zero_pad_shortcut = None
        if stride != 1 or in_channels != filters:
            if shortcut == "projection":
                self.projection_shortcut = nn.Sequential(conv1x1(in_channels, filters, stride), nn.BatchNorm2d(filters))
            else:
                self.zero_pad_shortcut = ZeroPadShortcut(in_channels, filters, stride)

    def forward(self, x):
        shortcut = x
        if self.projection_shortcut is not None:
            shortcut = self.projection_shortcut(x)
        elif self.zero_pad_shortcut is not None:
            shortcut = self.zero_pad_shortcut(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + shortcut)


class BottleneckBlock(nn.Module):
    """Version 2 block: full pre-activation bottleneck with 4x output channels. Where the shape changes,
    the 1x1 projection takes the pre-activated input, as in He et al.'s code."""

    expansion = 4

    def __init__(self, in_channels, filters, stride):
        super().__init__()
        out_channels = filters * self.expansion
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = conv1x1(in_channels, filters)
        self.bn2 = nn.BatchNorm2d(filters)
        self.conv2 = conv3x3(filters, filters, stride)
        self.bn3 = nn.BatchNorm2d(filters)
        self.conv3 = conv1x1(filters, out_channels)
        self.relu = nn.ReLU(inplace=False)  # in place would overwrite the identity shortcut x
        self.projection_shortcut = None
        if stride != 1 or in_channels != out_channels:
            self.projection_shortcut = conv1x1(in_channels, out_channels, stride)

    def forward(self, x):
        preact = self.relu(self.bn1(x))
        shortcut = x if self.projection_shortcut is None else self.projection_shortcut(preact)
        out = self.conv1(preact)
        out = self.conv2(self.relu(self.bn2(out)))
        out = self.conv3(self.relu(self.bn3(out)))
        return out + shortcut  # no activation after the addition


class StackLayer(nn.Sequential):
    """resnet_size blocks at one width; the first one changes stride and channels."""

    def __init__(self, block, resnet_size, in_channels, filters, stride, **options):
        blocks = [block(in_channels, filters, stride, **options)]
        blocks += [block(filters * block.expansion, filters, 1, **options) for _ in range(resnet_size - 1)]
        super().__init__(*blocks)


class OutputLayer(nn.Module):
    """(Version 2: the final BN-ReLU,) global average pooling, fully connected layer to the logits.
    No softmax: CrossEntropyLoss takes logits."""

    def __init__(self, in_channels, num_classes, preactivated):
        super().__init__()
        self.bn_relu = nn.Sequential(nn.BatchNorm2d(in_channels), nn.ReLU(inplace=True)) if preactivated else None
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_channels, num_classes)

    def forward(self, x):
        if self.bn_relu is not None:
            x = self.bn_relu(x)
        return self.fc(torch.flatten(self.pool(x), 1))


class ResNet(nn.Module):
    def __init__(self, resnet_version, resnet_size, num_classes=10, first_num_filters=16, shortcut="projection"):
        super().__init__()
        for name, rule, value in architecture_problems(resnet_version, resnet_size, shortcut):
            raise ValueError(f"{name} {rule}, got {value!r}")
        self.resnet_version, self.resnet_size = resnet_version, resnet_size
        block = StandardBlock if resnet_version == 1 else BottleneckBlock
        options = {"shortcut": shortcut} if resnet_version == 1 else {}
        # Version 1 starts with conv-BN-ReLU; version 2 starts with a bare conv, since every
        # pre-activation block begins with its own BN-ReLU.
        start = [conv3x3(3, first_num_filters)]
        if resnet_version == 1:
            start += [nn.BatchNorm2d(first_num_filters), nn.ReLU(inplace=True)]
        self.start_layer = nn.Sequential(*start)
        stacks, channels = [], first_num_filters
        for i in range(3):
            filters = first_num_filters * 2 ** i
            stacks.append(StackLayer(block, resnet_size, channels, filters, stride=1 if i == 0 else 2, **options))
            channels = filters * block.expansion
        self.stack_layers = nn.ModuleList(stacks)
        self.output_layer = OutputLayer(channels, num_classes, preactivated=resnet_version == 2)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    @property
    def depth(self):
        """Weighted layers: 6n+2 for version 1, 9n+2 for version 2."""
        return (6 if self.resnet_version == 1 else 9) * self.resnet_size + 2

    def forward(self, x):
        x = self.start_layer(x)
        for stack in self.stack_layers:
            x = stack(x)
        return self.output_layer(x)


def build_network(config):
    """The ResNet a run's config describes: a Config, or the dict of one that a checkpoint or config.json holds
    (those written before `shortcut` existed had projection shortcuts)."""
    values = config if isinstance(config, dict) else vars(config)
    return ResNet(values["resnet_version"], values["resnet_size"], values["num_classes"], values["first_num_filters"],
                  values.get("shortcut", "projection"))


def count_parameters(model):
    return sum(p.numel() for p in model.parameters())
