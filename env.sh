# Source me:  source env.sh
# Puts the project's venv (ROS 2 Kilted wheels, torch, ...), the colcon install space and the
# wheels' libraries on this shell's environment, so `instance_seg_node`, `isr`, `import rclpy` and
# `from instance_seg_msgs.msg import InstanceArray` work. `make setup` creates what it points at.
_isr_root="$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")" && pwd)"
_isr_venv="$_isr_root/.venv"
_isr_inst="$_isr_root/install"
_isr_py=python3.11

_isr_prepend() {  # _isr_prepend VAR DIR: put DIR first in VAR once
  case ":${!1}:" in *":$2:"*) ;; *) export "$1=$2${!1:+:${!1}}" ;; esac
}

export VIRTUAL_ENV="$_isr_venv"
_isr_prepend PATH "$_isr_venv/bin"
_isr_prepend PATH "$_isr_inst/instance_seg_ros/lib/instance_seg_ros"
_isr_prepend AMENT_PREFIX_PATH "$_isr_venv"
_isr_prepend AMENT_PREFIX_PATH "$_isr_inst/instance_seg_msgs"
_isr_prepend AMENT_PREFIX_PATH "$_isr_inst/instance_seg_ros"
_isr_prepend CMAKE_PREFIX_PATH "$_isr_venv"
_isr_prepend PYTHONPATH "$_isr_inst/instance_seg_msgs/lib/$_isr_py/site-packages"
_isr_prepend PYTHONPATH "$_isr_root/build/instance_seg_ros"  # symlink install: package links to the source, plus its egg-info
_isr_prepend LD_LIBRARY_PATH "$_isr_venv/lib"
_isr_prepend LD_LIBRARY_PATH "$_isr_inst/instance_seg_msgs/lib"

# ROS 2 middleware. LARGE_DATA lets 640x480 images reach best-effort (sensor-data) subscribers in
# other processes (without it Fast DDS drops them all), but NOT under LOCALHOST discovery, which we set
# to keep DDS traffic on this machine: here, subscribe to large images reliably (README "Large images").
export RMW_IMPLEMENTATION="${RMW_IMPLEMENTATION:-rmw_fastrtps_cpp}"
export FASTDDS_BUILTIN_TRANSPORTS="${FASTDDS_BUILTIN_TRANSPORTS:-LARGE_DATA}"
export ROS_AUTOMATIC_DISCOVERY_RANGE="${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}"
unset -f _isr_prepend
unset _isr_root _isr_venv _isr_inst _isr_py
