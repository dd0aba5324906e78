"""torch.hub entries: hw2's CIFAR-10 ResNets, each a hw2.export.Classifier that takes float RGB images in [0, 1],
[N, 3, 32, 32], normalises them inside as its network was trained, and names its outputs (model.classes):

    model = torch.hub.load("path/to/hw2", "resnet20", source="local", pretrained=True)  # a checkout: no network
    logits = model(images)
    names = [model.classes[i] for i in logits.argmax(1)]

Version 1 networks have the shortcuts of hw2's default Config: a 1x1 projection with BN where a stack changes the
shape (He et al.'s option B), 2,752 parameters more than the zero-padded ones (option A) of He et al.'s counts.
Only resnet20 has trained weights (pretrained=True: the bundled ResNet-20, in evaluation mode); the others are
untrained, in training mode, and normalise with the published per-channel mean and std of CIFAR-10's training images
(hw2.export.TRAINING_STATS).

Only the entries are callables here (torch.hub.list lists every public callable), so hw2 is imported as modules.
"""
import hw2.checkpoint
import hw2.errors
import hw2.export

# hw2's own imports: torch.hub checks these before it loads an entry
dependencies = ["torch", "numpy", "PIL", "tqdm", "filelock"]


def resnet20(pretrained=False):
    """ResNet-20, version 1 (272,474 parameters). pretrained=True: the bundled weights, trained with He et al.'s
    recipe (hw2/pretrained/README.md says how, and its test accuracy)."""
    if pretrained:
        return hw2.export.trained(hw2.checkpoint.PRETRAINED)
    return hw2.export.untrained(1, 3)


def resnet32(pretrained=False):
    """ResNet-32, version 1 (466,906 parameters), untrained."""
    return _untrained("resnet32", pretrained, 1, 5)


def resnet44(pretrained=False):
    """ResNet-44, version 1 (661,338 parameters), untrained."""
    return _untrained("resnet44", pretrained, 1, 7)


def resnet56(pretrained=False):
    """ResNet-56, version 1 (855,770 parameters), untrained."""
    return _untrained("resnet56", pretrained, 1, 9)


def resnet110(pretrained=False):
    """ResNet-110, version 1 (1,730,714 parameters), untrained."""
    return _untrained("resnet110", pretrained, 1, 18)


def preact_resnet164(pretrained=False):
    """Pre-activation ResNet-164, version 2 with bottleneck blocks (1,703,258 parameters), untrained."""
    return _untrained("preact_resnet164", pretrained, 2, 18)


def resnet(resnet_version=1, resnet_size=3, first_num_filters=16, num_classes=10, pretrained=False):
    """Any of hw2's ResNets, untrained: the arguments mean what `python -m hw2 train`'s flags of the same names
    do; num_classes 10 names CIFAR-10's classes, 100 CIFAR-100's."""
    return _untrained("resnet", pretrained, resnet_version, resnet_size, first_num_filters, num_classes)


def _untrained(name, pretrained, *architecture):
    if pretrained:
        raise hw2.errors.ConfigError(f"{name} has no pretrained weights (only resnet20 has); load it with "
                                     f"{hw2.errors.field('pretrained', False)} and train it, or load resnet20 with "
                                     f"{hw2.errors.field('pretrained', True)}")
    return hw2.export.untrained(*architecture)
