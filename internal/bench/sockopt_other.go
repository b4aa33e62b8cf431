//go:build !linux

package bench

import "syscall"

// bindNoPort is a Linux option; elsewhere bind picks the port as usual.
func bindNoPort(syscall.RawConn) error { return nil }
