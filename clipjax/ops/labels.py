"""Label conventions shared by the data, the losses and the metrics."""

# The label of a pixel that counts nowhere (mmseg's ignore_index): ADE20K's "other" after reduce_zero_label,
# the padding of crops and evaluation canvases.
IGNORE_LABEL = 255
