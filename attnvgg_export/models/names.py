"""The variant names, without importing torch (the registry checks it registers exactly these)."""

VARIANT_NAMES = ("la", "sa", "se", "vgg16")
