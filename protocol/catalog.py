"""Names a request may use: torchvision classification models and augmentation methods.

Kept here, free of torch, so web validates at submission; a test checks every model name
against torchvision itself.
"""

from __future__ import annotations

_REGNET_SIZES = ("400mf", "800mf", "1_6gf", "3_2gf", "8gf", "16gf", "32gf")

MODELS: tuple[str, ...] = (
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
    "resnext50_32x4d", "resnext101_32x8d", "resnext101_64x4d",
    "wide_resnet50_2", "wide_resnet101_2",
    "alexnet",
    "vgg11", "vgg13", "vgg16", "vgg19", "vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn",
    "squeezenet1_0", "squeezenet1_1",
    "densenet121", "densenet169", "densenet201", "densenet161",
    "googlenet", "inception_v3",
    "mnasnet0_5", "mnasnet0_75", "mnasnet1_0", "mnasnet1_3",
    "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large",
    *(f"efficientnet_b{i}" for i in range(8)),
    "efficientnet_v2_s", "efficientnet_v2_m", "efficientnet_v2_l",
    *(f"regnet_x_{s}" for s in _REGNET_SIZES),
    *(f"regnet_y_{s}" for s in _REGNET_SIZES),
    "regnet_y_128gf",
    "shufflenet_v2_x0_5", "shufflenet_v2_x1_0", "shufflenet_v2_x1_5", "shufflenet_v2_x2_0",
    "convnext_tiny", "convnext_small", "convnext_base", "convnext_large",
    "vit_b_16", "vit_b_32", "vit_l_16", "vit_l_32", "vit_h_14",
    "swin_t", "swin_s", "swin_b", "swin_v2_t", "swin_v2_s", "swin_v2_b",
    "maxvit_t",
)  # fmt: skip

MODEL_SET: frozenset[str] = frozenset(MODELS)

#: Models with a fixed input size: ``image_size`` must equal it.
FIXED_INPUT_SIZE: dict[str, int] = {
    "vit_b_16": 224, "vit_b_32": 224, "vit_l_16": 224, "vit_l_32": 224, "vit_h_14": 518,
    "maxvit_t": 224,
}  # fmt: skip

#: Smallest ``image_size`` a model accepts (its downsampling needs room).
MIN_INPUT_SIZE: dict[str, int] = {"inception_v3": 75, "alexnet": 63, "googlenet": 32}

AUGMENT_METHODS: tuple[str, ...] = (
    "AdvancedBlur",
    "CLAHE",
    "ColorJitter",
    "GaussNoise",
    "ISONoise",
    "Sharpen",
)

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
