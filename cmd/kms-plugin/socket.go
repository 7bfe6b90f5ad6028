package main

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// socketPath returns the file path of a -socket value: a path, or a
// unix:// URL as written in an EncryptionConfiguration.
func socketPath(v string) (string, error) {
	p := strings.TrimPrefix(v, "unix://")
	switch {
	case p == "":
		return "", errors.New("-socket is empty")
	case strings.HasPrefix(p, "@"):
		return "", errors.New("-socket: abstract sockets have no file mode to restrict; give a file path")
	case !filepath.IsAbs(p):
		return "", fmt.Errorf("-socket %q: want an absolute path", v)
	}
	return filepath.Clean(p), nil
}

// unixSocket is the plugin's listening socket.
type unixSocket struct {
	*net.UnixListener
	path string
	fi   fs.FileInfo // the socket file as made, to remove only our own
}

// listenUnix listens on a unix socket at path with mode 0600 from the
// start: it binds in a fresh private directory next to path, sets the
// mode, then renames the socket into place. A stale socket at path (one
// that no process accepts on, left by a crash) is replaced; a live one,
// or anything that is not a socket, is an error.
func listenUnix(path string) (*unixSocket, error) {
	if err := checkStale(path); err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp(filepath.Dir(path), ".kms-plugin-")
	if err != nil {
		return nil, fmt.Errorf("socket directory: %w", err)
	}
	defer os.RemoveAll(dir)
	tmp := filepath.Join(dir, "s")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		return nil, err
	}
	ln.SetUnlinkOnClose(false)
	fail := func(err error) (*unixSocket, error) {
		ln.Close()
		return nil, err
	}
	if err := os.Chmod(tmp, 0o600); err != nil {
		return fail(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fail(fmt.Errorf("socket %s: %w", path, err))
	}
	fi, err := os.Lstat(path)
	if err != nil {
		return fail(err)
	}
	return &unixSocket{UnixListener: ln, path: path, fi: fi}, nil
}

// remove deletes the socket file if it is still the one listenUnix made.
func (s *unixSocket) remove() {
	if fi, err := os.Lstat(s.path); err == nil && os.SameFile(fi, s.fi) {
		os.Remove(s.path)
	}
}

// checkStale returns nil if path is free or holds a socket nobody accepts
// on (which listenUnix then replaces).
func checkStale(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.Mode()&fs.ModeSocket == 0 {
		return fmt.Errorf("%s exists and is not a socket; refusing to replace it", path)
	}
	c, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		c.Close()
		return fmt.Errorf("%s: another process is serving on this socket", path)
	}
	return nil
}
