"""Tasks and data: the synthetic radiograph task and the imagefolder format of real sites."""

from fedvlm.data.example import VQAExample
from fedvlm.data.imagefolder import load_imagefolder, validate_imagefolder, write_imagefolder
from fedvlm.data.partition import heldout_set, synthetic_site
from fedvlm.data.radiograph import ANSWERS, QUESTION_TYPES, Acquisition, make_example, make_examples
from fedvlm.data.site import SiteData

__all__ = [
    "ANSWERS",
    "QUESTION_TYPES",
    "Acquisition",
    "SiteData",
    "VQAExample",
    "heldout_set",
    "load_imagefolder",
    "make_example",
    "make_examples",
    "synthetic_site",
    "validate_imagefolder",
    "write_imagefolder",
]
