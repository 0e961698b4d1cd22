"""Imported once by the supervisor's fork server so that warm jobs start in milliseconds.

Imports only: no torch operation and no CUDA call may ever run in the fork server (a child
forked from a process that has run torch ops hangs once it uses several threads), and
``CUDA_VISIBLE_DEVICES`` must still be settable in each child.
"""

from __future__ import annotations

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations  # noqa: E402,F401
import cv2  # noqa: E402,F401
import numpy  # noqa: E402,F401
import sklearn.metrics  # noqa: E402,F401
import torch  # noqa: E402,F401
import torchvision  # noqa: E402,F401
import zmq  # noqa: E402,F401

import runner.entry  # noqa: E402,F401

# The jobs themselves (imports only: module level defines functions and constants, no torch op).
import runner.inference  # noqa: E402,F401
import runner.preprocessing  # noqa: E402,F401
import runner.serving.replica  # noqa: E402,F401
import runner.training  # noqa: E402,F401
