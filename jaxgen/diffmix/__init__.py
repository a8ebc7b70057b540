"""Diff-Mix (paper 001): see jaxgen/diffmix/main.py."""
