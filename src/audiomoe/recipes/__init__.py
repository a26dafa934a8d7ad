"""Recipes: whole jobs built from the layers below (data, models, training, evaluation, analysis).

``audiomoe.recipes.demo`` is ``audiomoe demo`` / ``make demo``: the toy-scale comparison of the MoE-Adapter with
dense adapters at matched parameters, over several seeds, with intervals.
"""
