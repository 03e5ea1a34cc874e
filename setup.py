"""ftvm: fault-tolerant virtual machines for static x86-64 guests, after VMware FT.

The C fast path (hypervisor/fastpath.c) is built by cffi against the unicorn wheel."""
from setuptools import find_packages, setup

setup(
    name="ftvm",
    version="0.1.0",
    description="Record/replay and primary/backup fault tolerance for x86-64 guests on Unicorn",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["hypervisor", "hypervisor.*", "logging_channel", "logging_channel.*",
                                   ]),
    package_data={"hypervisor": ["fastpath.c", "fastpath_files.c", "fastpath.h"], "logging_channel": ["codec.c"]},
    setup_requires=["cffi>=1.16"],
    cffi_modules=["hypervisor/_fastpath_build.py:ffibuilder", "logging_channel/_codec_build.py:ffibuilder"],
    install_requires=[
        "unicorn==2.1.4",  # the version unicorn-patch/ applies to
        "cffi>=1.16",
        "msgpack>=1.0",
        "pyzmq>=25",
        "pyelftools>=0.29",
        "capstone>=5.0",
        "click>=8.1",
        "rich>=13",
    ],
    extras_require={"test": ["pytest>=7", "pytest-timeout", "pytest-xdist>=3.5", "hypothesis>=6", "redis>=5"],
                    "plot": ["matplotlib>=3.5"],
                    # --coordinator etcd://...: the gateway's JSON API (no protobuf or gRPC pin)
                    "etcd": ["etcd3gw>=2.4"]},
    entry_points={"console_scripts": ["ftvm=hypervisor.cli:main"]},
)
