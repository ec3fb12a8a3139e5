"""One scan file into 8-bit grayscale pictures, safely: the limits checked before anything is decoded (limits.py),
the one dispatcher that picks the reader by the file's bytes (read.py), the readers as siblings (raster.py for what
Pillow reads, dicom.py with dicom_checks.py for pydicom, nifti.py for nibabel), the pictures they return
(pictures.py) and the head crop and intensity step every picture then gets (preprocess.py)."""
