"""Text generation with a loaded model: batched generation, per-request settings, constrained decoding.

It sits below ``problems`` (which sample and evaluate with it) and above ``models`` and ``data``: it takes a model
object and never loads one. Loading a trained run is ``tunelab.infer.model``'s job.
"""
