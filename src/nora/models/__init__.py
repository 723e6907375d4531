"""Model zoo: small reference networks for noise experiments, built by name.

Every model uses module objects for each layer that should be a noise site. Importing this package
registers all models; ``build_model(name, ...)`` builds one, ``list_models()`` names them.
"""

from nora.models.registry import build_model, list_models, model_defaults, register_model
from nora.models.mlp import MLP
from nora.models.autoencoder import DenseAutoencoder
from nora.models.kws import KwsCNN
from nora.models.lenet import LeNet5
from nora.models.resnet import BasicBlock, ResNet
from nora.models.vgg import VGG11
from nora.models import quantized  # noqa: F401  registers the QAT builders; Brevitas loads on first build
from nora.models import multihead  # noqa: F401  registers multihead, mcdropout and ensemble (uncertainty)

__all__ = [
    "BasicBlock",
    "DenseAutoencoder",
    "KwsCNN",
    "LeNet5",
    "MLP",
    "ResNet",
    "VGG11",
    "build_model",
    "list_models",
    "model_defaults",
    "register_model",
]
