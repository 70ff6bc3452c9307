"""The classifier's own input: size and value range, inside the defense.

The EBM purifies states at its size in [-1, 1]; a naturally trained
classifier may want another size and range (the reference defends Keras'
EfficientNet-B7, which takes 600x600 images in [0, 255], behind a 224x224
EBM). `InputAdapter` maps between them inside the defended model, so the
attack differentiates through it and the SavedModel carries it.
"""

import keras
from keras import ops


class InputAdapter(keras.Model):
    """`classifier(lo + (hi - lo) (resize(x) + 1) / 2)` for states `x` in
    [-1, 1].

    `resize` is bilinear (differentiable, no antialiasing) to `size x size`
    (0: no resize); `(lo, hi)` is the classifier's value range, e.g.
    `(0, 255)` for Keras' EfficientNets, `(-1, 1)` for the identity map.

    Args:
        classifier: a Keras model, adapted inputs -> logits.
        size: the classifier's input height and width; 0 keeps the size.
        value_range: `(lo, hi)` the classifier expects.
    """

    def __init__(self, classifier, size=0, value_range=(-1.0, 1.0), **kwargs):
        super().__init__(**kwargs)
        lo, hi = (float(v) for v in value_range)
        if size < 0 or not lo < hi:
            raise ValueError(
                f"need size >= 0 and lo < hi, got size {size}, range {value_range}"
            )
        self.classifier = classifier
        self.size = int(size)
        self.value_range = (lo, hi)
        self.built = True

    @property
    def adapter_settings(self):
        """What the adapter computes with (part of the defense's digest)."""
        return {"size": self.size, "value_range": list(self.value_range)}

    def adapt(self, x):
        if self.size:
            x = ops.image.resize(
                x, (self.size, self.size), interpolation="bilinear", antialias=False
            )
        lo, hi = self.value_range
        return lo + (hi - lo) * (x + 1.0) / 2.0

    def call(self, x, training=False):
        return self.classifier(self.adapt(x), training=training)


def adapted(classifier, size=0, value_range=(-1.0, 1.0)):
    """`classifier` behind an `InputAdapter`, or itself where none is needed
    (its size is 0 and its range [-1, 1])."""
    if not size and tuple(float(v) for v in value_range) == (-1.0, 1.0):
        return classifier
    return InputAdapter(classifier, size, value_range)
