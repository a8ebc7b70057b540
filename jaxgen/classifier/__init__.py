"""jaxgen.classifier: the config section (`config`), loss (`losses`), training
(`train.fit_classifier`), the trained classifier and restoring it (`inference`), evaluation
(`evaluate`), augmentation (`augment`), samplers (`sampling`), fine-tuning across label sets
(`transfer`) and the `classifier` method (`main`).

See docs/classifier_training.md.
"""
