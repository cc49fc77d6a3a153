"""SuperGlobal from Python: build a descriptor, embed images or tensors.

    from superglobal import load_descriptor
    model = load_descriptor("weights/CVPR2022_CVNet_R50.pyth", depth=50)
    X = model.embed_images(["a.jpg", "b.jpg"])      # numpy (2, 2048), L2-normalised rows

See docs/api.md. Importing this package checks the project's top-level names and OpenCV at once;
the API itself (and torch) is imported on first use, so the superglobal-* commands can set up their
Ctrl-C handling before the heavy imports.
"""

from superglobal._checkout import bind_project_modules, require_opencv

bind_project_modules()
require_opencv()

__all__ = ["Descriptor", "load_descriptor", "load_image"]


def __getattr__(name):
    if name in __all__:
        from superglobal import api

        return getattr(api, name)
    raise AttributeError(f"module 'superglobal' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
