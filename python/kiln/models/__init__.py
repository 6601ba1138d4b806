"""kiln model files: one per family, each with its Config, blocks, base model, task heads and
the deployables it declares (`DEPLOYABLES`, see kiln/deploy.py), which kiln.registry collects.
"""
