"""Optimizers and learning-rate schedules (PyTorch's torch.optim names)."""
from tinypact.optim import lr_scheduler
from tinypact.optim.lr_scheduler import CosineAnnealingLR, LRScheduler, MultiStepLR, StepLR
from tinypact.optim.optimizers import SGD, Adam, Optimizer

__all__ = ["Optimizer", "SGD", "Adam", "LRScheduler", "StepLR", "MultiStepLR",
           "CosineAnnealingLR", "lr_scheduler"]
