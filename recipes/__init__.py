"""genflow's recipes: one module + one default YAML each, registered as `genflow.recipes` entry points."""
