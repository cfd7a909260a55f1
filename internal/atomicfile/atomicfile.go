// Package atomicfile writes files so that a crash leaves the old or the new content, never a
// torn file, and so that nobody else's file can be written through a planted link.
package atomicfile

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
)

// Write writes data to path through a new temporary file in the same directory, created
// exclusively (O_EXCL|O_NOFOLLOW, a random name: a link planted there is never followed) with
// mode from the start, synced, then renamed over path. The file ends with mode exactly.
func Write(path string, data []byte, mode os.FileMode) error {
	dir := filepath.Dir(path)
	var f *os.File
	var tmp string
	for i := 0; ; i++ {
		r := make([]byte, 8)
		if _, err := rand.Read(r); err != nil {
			return fmt.Errorf("write %s: %w", path, err)
		}
		tmp = filepath.Join(dir, "."+filepath.Base(path)+".tmp"+hex.EncodeToString(r))
		var err error
		f, err = os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, mode.Perm())
		if err == nil {
			break
		}
		if !os.IsExist(err) || i == 9 {
			return fmt.Errorf("write %s: %w", path, err)
		}
	}
	defer os.Remove(tmp) // no-op after the rename
	// The umask may have narrowed the mode; widen it to exactly mode before any data is in.
	if err := f.Chmod(mode.Perm()); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}
