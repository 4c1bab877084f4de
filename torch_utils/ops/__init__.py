"""Custom ops with plain-PyTorch references: bias_act, upfirdn2d, conv2d_resample,
conv2d_gradfix, grid_sample_gradfix, fma. Network pickles import them by these module names."""
