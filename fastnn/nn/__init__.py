"""fastnn.nn: layers, losses, optimizers and a Keras-like `Sequential` model over
the fastnn kernels. Every computation is a kernel of the current backend (or the
model's own), so a model trains the same way on numpy, numba and c::

    from fastnn import nn
    model = nn.Sequential([nn.Dense(128, "relu"), nn.Dropout(0.1), nn.Dense(10)],
                          loss="sparse_categorical_crossentropy", optimizer=nn.Adam(1e-3), seed=0)
    history = model.fit(X, y, epochs=20, batch_size=64, validation_split=0.1,
                        callbacks=[nn.EarlyStopping(patience=3)])
    proba = model.predict(X_test)
    model.save("model.npz"); model = nn.load("model.npz")
"""

from . import metrics
from .callbacks import (
    Callback,
    CSVLogger,
    EarlyStopping,
    History,
    LearningRateScheduler,
    ModelCheckpoint,
    ReduceLROnPlateau,
    TerminateOnNaN,
)
from .layers import (
    GRU,
    LSTM,
    Activation,
    AveragePooling2D,
    BatchNorm,
    Conv2D,
    Dense,
    Dropout,
    Embedding,
    Flatten,
    GlobalAveragePooling2D,
    Layer,
    MaxPool2D,
    SimpleRNN,
    register_layer,
)
from .losses import (
    AbsoluteError,
    BinaryCrossEntropy,
    BinaryLogLoss,
    Hinge,
    Huber,
    LogLoss,
    Loss,
    PoissonLoss,
    SoftmaxCrossEntropy,
    SquaredError,
    SquaredLoss,
    get_loss,
)
from .model import Sequential, load
from .optimizers import (
    SGD,
    Adadelta,
    Adagrad,
    Adam,
    AdamW,
    CosineDecay,
    ExponentialDecay,
    InverseScaling,
    Optimizer,
    ReduceOnPlateau,
    RMSprop,
    Schedule,
    StepDecay,
    get_optimizer,
    get_schedule,
)
from .residual import Residual
from .training import TrainingDivergedError

__all__ = [
    "SGD", "AbsoluteError", "CSVLogger", "LearningRateScheduler", "ModelCheckpoint", "ReduceLROnPlateau",
    "TerminateOnNaN", "metrics", "Activation", "Adadelta", "Adagrad", "Adam", "AdamW", "BatchNorm",
    "BinaryCrossEntropy", "BinaryLogLoss", "Callback", "CosineDecay", "Dense", "Dropout", "EarlyStopping",
    "ExponentialDecay", "Flatten", "Hinge", "History", "Huber", "InverseScaling", "Layer", "LogLoss", "Loss",
    "Optimizer", "PoissonLoss", "RMSprop", "ReduceOnPlateau", "Residual", "Schedule", "Sequential",
    "SoftmaxCrossEntropy", "SquaredError", "SquaredLoss", "StepDecay", "TrainingDivergedError", "get_loss",
    "get_optimizer", "get_schedule", "load", "register_layer",
    # convolution
    "AveragePooling2D", "Conv2D", "GlobalAveragePooling2D", "MaxPool2D",
]
__all__ += ["GRU", "LSTM", "Embedding", "SimpleRNN"]  # recurrence
