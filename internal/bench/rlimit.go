package bench

import (
	"fmt"
	"syscall"
)

// RaiseFileLimit raises this process's soft limit of open files to the
// hard limit and returns the hard limit: every connection is a file, and
// the soft limit is often far below what a load test needs. Nobody can
// raise the hard limit; it bounds the connections of one process (see
// Options.MaxConnsPerWorker).
func RaiseFileLimit() (uint64, error) {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 0, fmt.Errorf("get open-file limit: %w", err)
	}
	if rl.Cur < rl.Max {
		rl.Cur = rl.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
			return 0, fmt.Errorf("raise open-file limit to %d: %w", rl.Max, err)
		}
	}
	return rl.Max, nil
}

// cpuSeconds is the CPU time (user and system) of this process and of its
// children that have been waited for.
func cpuSeconds() float64 {
	var total float64
	for _, who := range []int{syscall.RUSAGE_SELF, syscall.RUSAGE_CHILDREN} {
		var ru syscall.Rusage
		if syscall.Getrusage(who, &ru) != nil {
			continue
		}
		total += tvSeconds(ru.Utime) + tvSeconds(ru.Stime)
	}
	return total
}

func tvSeconds(tv syscall.Timeval) float64 {
	return float64(tv.Sec) + float64(tv.Usec)/1e6
}
