"""Datasets, preprocessing and the synthetic generator (numpy), and synthetic anomalies on good
samples for training and calibration (torch, `anomalies`); no ROS."""
from dbmr_ros.data.datasets import open_dataset, SampleRef
from dbmr_ros.data.preprocess import PreprocessConfig, preprocess
from dbmr_ros.data.sample import Sample

__all__ = ['open_dataset', 'SampleRef', 'PreprocessConfig', 'preprocess', 'Sample']
