"""Tasks and data: the synthetic radiograph task and the imagefolder format of real sites."""

from fedvlm.data.example import VQAExample

__all__ = ["VQAExample"]
