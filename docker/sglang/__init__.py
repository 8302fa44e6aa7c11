"""Stand-in for the ``sglang`` package inside the Docker test image: only ``sglang.launch_server`` exists."""
