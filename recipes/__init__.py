"""genflow's recipes (installed as `genflow_recipes`). Each is a package that owns its world: recipe,
configs (`configs/*.yaml`, shipped in the wheel), data maker or importer, single-use model and metric.
Its `card.py` is torch-free: it declares the recipe card(s) that `genflow recipes` reads."""
