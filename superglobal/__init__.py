"""SuperGlobal from Python: build a descriptor, embed images or tensors.

    from superglobal import load_descriptor
    model = load_descriptor("weights/CVPR2022_CVNet_R50.pyth", depth=50)
    X = model.embed_images(["a.jpg", "b.jpg"])      # numpy (2, 2048), L2-normalised rows

See README.md, "Installing and the Python API".
"""

from superglobal._checkout import bind_project_modules

bind_project_modules()

from superglobal.api import Descriptor, load_descriptor, load_image  # noqa: E402

__all__ = ["Descriptor", "load_descriptor", "load_image"]
