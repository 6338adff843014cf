"""fputrace: ground truth about FPU/SIMD state handling in a Linux KVM host."""

__version__ = "0.1.0"
