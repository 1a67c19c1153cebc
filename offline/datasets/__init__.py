"""Dataset loaders (MM5 now; MFNet, PST900, FMB later) and the generator of MM5-layout test data."""
