package file

import "os"

// linkNoReplace gives tmp the name p with link(2), which fails when p exists, then
// removes the temp name.
func linkNoReplace(tmp, p string) error {
	if err := os.Link(tmp, p); err != nil {
		return err
	}
	return os.Remove(tmp)
}
