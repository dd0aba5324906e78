"""Name the classes of pictures with a network that `python -m hw2 export --format onnx` wrote, with onnxruntime,
numpy and pillow alone (pip install onnxruntime numpy pillow): neither hw2 nor torch is needed.

    python -m hw2 export --format onnx --output resnet20.onnx   # the bundled ResNet-20
    python onnx_example.py resnet20.onnx cat.jpg ship.png

The file takes float RGB images in [0, 1], [N, 3, 32, 32], normalises them itself and gives logits [N, C]; its
metadata "classes" names the C outputs.
"""
import json
import sys

import numpy as np
import onnxruntime
from PIL import Image, ImageOps


def read_picture(path):
    """A picture file -> float32 [3, 32, 32], RGB in [0, 1]: upright, its largest central square downscaled to
    32x32 by averaging (as hw2 brings pictures to CIFAR's size)."""
    image = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    image = image.resize((32, 32), Image.Resampling.BOX, box=(left, top, left + side, top + side))
    return np.asarray(image, np.float32).transpose(2, 0, 1) / 255


def main(model, pictures):
    session = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
    classes = json.loads(session.get_modelmeta().custom_metadata_map["classes"])
    images = np.stack([read_picture(path) for path in pictures])
    logits = session.run(None, {"images": images})[0]
    probabilities = np.exp(logits - logits.max(1, keepdims=True))  # softmax, without overflow
    probabilities /= probabilities.sum(1, keepdims=True)
    for path, p in zip(pictures, probabilities):
        top = p.argsort()[::-1][:3]
        print(f"{path}: " + ", ".join(f"{classes[i]} {p[i]:.1%}" for i in top))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
