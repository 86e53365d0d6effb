"""Packaging lives in setup.cfg; this shim maps the ``coral`` package onto ``libs/coral``."""

from setuptools import find_packages, setup

coral_packages = ["coral"] + [f"coral.{p}" for p in find_packages("libs/coral")]
setup(
    packages=coral_packages + find_packages(include=["lightning_modules*", "finetuning*"]),
    package_dir={"coral": "libs/coral"},
)
