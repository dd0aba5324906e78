"""hw2: deep residual networks (He et al. 2015, 2016) on CIFAR-10."""
