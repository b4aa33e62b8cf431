package bench

import "syscall"

// ipBindAddressNoPort is IP_BIND_ADDRESS_NO_PORT (linux/in.h), which the
// syscall package does not name on every architecture.
const ipBindAddressNoPort = 0x18

// bindNoPort tells the kernel to pick the ephemeral port of a socket bound
// to a source address at connect time, from the whole 4-tuple, instead of
// at bind time: a bind(addr, 0) must find a port unused by every other
// socket of that address, a search that grows with the connections and
// made a 40,000-connection ramp spend most of its time in the kernel.
func bindNoPort(c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_IP, ipBindAddressNoPort, 1)
	})
	if err != nil {
		return err
	}
	return serr
}
