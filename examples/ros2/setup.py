"""ament_python package of the moai-edge ROS 2 example (built by colcon; not part of the moai-edge distribution)."""

from setuptools import setup

PACKAGE = "moai_edge_ros"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=[PACKAGE],
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml", "README.md"]),
        (f"share/{PACKAGE}/launch", ["launch/moai_edge.launch.py"]),
    ],
    install_requires=["setuptools"],  # moai-edge itself comes from pip, into the Python that runs the node (README)
    zip_safe=True,
    maintainer="moai-edge developers",
    maintainer_email="moai-edge@example.com",
    description="Answers questions about camera frames with a moai-edge engine package",
    license="Apache-2.0",
    tests_require=["pytest"],
    entry_points={"console_scripts": [f"moai_edge_node = {PACKAGE}.node:main"]},
)
