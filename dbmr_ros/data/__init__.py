"""Datasets, preprocessing and the synthetic generator (numpy in, numpy out; no ROS, no torch)."""
from dbmr_ros.data.datasets import open_dataset, SampleRef
from dbmr_ros.data.preprocess import PreprocessConfig, preprocess
from dbmr_ros.data.sample import Sample

__all__ = ['open_dataset', 'SampleRef', 'PreprocessConfig', 'preprocess', 'Sample']
