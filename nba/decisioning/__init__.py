"""The decisioning core: rules -> contact policies -> P, V, L -> arbitration -> experiment layer.

Pure functions over arrays: the same code decides for one customer and for a million.
"""
