"""zfcore's version, imported by the layers that write it into files and pages."""

__version__ = "0.1.0"
