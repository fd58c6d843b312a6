// Package sdnotify tells systemd a daemon's state (sd_notify), so units can
// use Type=notify: "READY=1" once serving, "STOPPING=1" on shutdown. Without
// NOTIFY_SOCKET (not under systemd) it does nothing.
package sdnotify

import (
	"fmt"
	"net"
	"os"
)

// Notify sends state to systemd's notification socket. It returns nil when
// the process is not run by systemd with notification enabled.
func Notify(state string) error {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return nil
	}
	if path[0] == '@' { // abstract socket
		path = "\x00" + path[1:]
	}
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return fmt.Errorf("sd_notify: %w", err)
	}
	// Write sends the datagram or fails; Close has nothing left to flush.
	defer func() { _ = conn.Close() }()
	if _, err := conn.Write([]byte(state)); err != nil {
		return fmt.Errorf("sd_notify: %w", err)
	}
	return nil
}

// Ready reports that the daemon is serving.
func Ready() error { return Notify("READY=1") }

// Stopping reports that the daemon is shutting down.
func Stopping() error { return Notify("STOPPING=1") }
