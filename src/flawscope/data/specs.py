"""What a data spec on the command line can be (:func:`flawscope.workflow.open_data` reads them); no torch, so
the command line's help needs none."""

DATA_SPEC_HELP = (
    "An MVTec-layout category (train/good, test/<type>, ground_truth/), a folder with good/ (and optionally "
    "defect/ and masks/), or elpv:mono / elpv:poly (test cells from solar modules never seen in training; "
    "elpv:mono:shuffled for the cell-shuffled split of flawscope 0.1)."
)
GROUPS_HELP = (
    "A regular expression that reads from each file name the part, lot or position the image shows (its first "
    "group, or the whole match): calibration images then come from other groups than the training images."
)

__all__ = ["DATA_SPEC_HELP", "GROUPS_HELP"]
