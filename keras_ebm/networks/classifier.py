"""Classifiers: the defended networks and the features of the digits FID."""

import keras
from keras import layers, ops


@keras.saving.register_keras_serializable(package="keras_ebm")
class DigitsCNN(keras.Model):
    """Small CNN for 16x16 digits: logits `[B, classes]`.

    `features(x)` returns the penultimate activations `[B, 128]`, the
    embedding of the `digits` FID backbone.
    """

    def __init__(self, image_shape=(16, 16, 1), num_classes=10, **kwargs):
        super().__init__(**kwargs)
        self.image_shape = tuple(image_shape)
        self.num_classes = num_classes
        self.convs = [
            layers.Conv2D(c, 3, padding="same", activation="relu", name=f"conv{i}")
            for i, c in enumerate((32, 32, 64, 64))
        ]
        self.pool = layers.MaxPooling2D(2)
        self.dense = layers.Dense(128, activation="relu", name="features")
        self.dropout = layers.Dropout(0.3)
        self.logits = layers.Dense(num_classes, name="logits")
        self(ops.zeros((1,) + self.image_shape))

    def features(self, x, training=False):
        for i, conv in enumerate(self.convs):
            x = conv(x)
            if i % 2:
                x = self.pool(x)
        return self.dense(ops.reshape(x, (ops.shape(x)[0], -1)))

    def call(self, x, training=False):
        return self.logits(self.dropout(self.features(x), training=training))

    def get_config(self):
        config = super().get_config()
        config.update(image_shape=self.image_shape, num_classes=self.num_classes)
        return config


class _WideBlock(layers.Layer):
    """Pre-activation block: `conv2(relu(bn2(conv1(relu(bn1(x))))))` with the
    stride on `conv2`, plus a 1x1 shortcut when shape changes."""

    def __init__(self, channels, stride, in_channels, **kwargs):
        super().__init__(**kwargs)
        # Keras momentum 0.1 = torch 0.9, the reference's (swapped) choice.
        self.bn1 = layers.BatchNormalization(momentum=0.1, name="bn1")
        self.bn2 = layers.BatchNormalization(momentum=0.1, name="bn2")
        self.conv1 = layers.Conv2D(channels, 3, padding="same", name="conv1")
        self.stride = stride
        self.conv2 = layers.Conv2D(
            channels,
            3,
            strides=stride,
            padding="same" if stride == 1 else "valid",
            name="conv2",
        )
        self.shortcut = None
        if stride != 1 or in_channels != channels:
            self.shortcut = layers.Conv2D(channels, 1, strides=stride, name="shortcut")

    def call(self, x, training=False):
        h = self.conv1(ops.relu(self.bn1(x, training=training)))
        h = ops.relu(self.bn2(h, training=training))
        if self.stride != 1:  # tf.pad(1) + VALID, as the reference
            h = ops.pad(h, ((0, 0), (1, 1), (1, 1), (0, 0)))
        h = self.conv2(h)
        return h + (x if self.shortcut is None else self.shortcut(x))


@keras.saving.register_keras_serializable(package="keras_ebm")
class WideResNet(keras.Model):
    """WRN-depth-width (ebm-life-cycle `WideResNetTF2`), logits `[B, classes]`.

    With `weight_decay > 0`, training adds `wd * sum_v ||v||^2 / 2` over all
    trainable variables, as the reference's `wd * sum(tf.nn.l2_loss(v))`.
    """

    def __init__(
        self,
        depth=28,
        width=10,
        num_classes=10,
        image_shape=(32, 32, 3),
        weight_decay=0.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if (depth - 4) % 6:
            raise ValueError("WideResNet depth must be 6n + 4")
        self.depth, self.width = depth, width
        self.num_classes, self.image_shape = num_classes, tuple(image_shape)
        self.weight_decay = weight_decay
        n = (depth - 4) // 6
        widths = [16, 16 * width, 32 * width, 64 * width]
        self.stem = layers.Conv2D(widths[0], 3, padding="same", name="conv1")
        self.blocks = []
        in_ch = widths[0]
        for stage, (ch, stride) in enumerate(zip(widths[1:], (1, 2, 2), strict=True)):
            for i in range(n):
                self.blocks.append(
                    _WideBlock(
                        ch, stride if i == 0 else 1, in_ch, name=f"stage{stage + 1}_{i}"
                    )
                )
                in_ch = ch
        self.bn = layers.BatchNormalization(momentum=0.9, name="bn1")
        self.head = layers.Dense(num_classes, name="linear")
        self(ops.zeros((1,) + self.image_shape))

    def call(self, x, training=False):
        x = self.stem(x)
        for block in self.blocks:
            x = block(x, training=training)
        x = ops.mean(ops.relu(self.bn(x, training=training)), axis=(1, 2))
        if training and self.weight_decay > 0:
            self.add_loss(
                self.weight_decay
                * sum(ops.sum(ops.square(v)) / 2 for v in self.trainable_variables)
            )
        return self.head(x)

    def get_config(self):
        config = super().get_config()
        config.update(
            depth=self.depth,
            width=self.width,
            num_classes=self.num_classes,
            image_shape=self.image_shape,
            weight_decay=self.weight_decay,
        )
        return config
