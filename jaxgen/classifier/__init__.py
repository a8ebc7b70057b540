"""jaxgen.classifier: image classifier training (`train.fit_classifier`), evaluation
(`evaluate`), augmentation (`augment`), samplers (`sampling`) and the `classifier` method (`main`).

See docs/classifier_training.md.
"""
