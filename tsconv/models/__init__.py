"""Models. tsconv.models.registry builds them from a config; the reference modules are
layers, tcn and multiscale; fast/ holds their CPU drop-ins. Imports nothing, so that loading a
config (which reads registry's config classes) does not import torch."""
