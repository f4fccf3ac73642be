"""tsconv: temporal convolutional networks for financial time series, evaluated walk-forward."""

__version__ = "0.1.0"
