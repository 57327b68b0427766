package walarchive

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	"filippo.io/age"
)

// Client-side encryption (optional, per archive) is age (https://age-encryption.org/v1):
// an encrypted object is an age file whose plaintext is the whole unencrypted object (the
// zstd file with kcbackup's skippable frames), so
//
//	age -d -i key.txt OBJECT | zstd -d
//
// gives the original bytes. age draws a fresh random file key for every object and wraps
// it for each X25519 recipient; the payload is ChaCha20-Poly1305 in 64 KiB chunks, each
// authenticated with its position and whether it is the last, so reordered, dropped,
// truncated, appended or altered bytes fail to decrypt. A sidecar that only archives needs
// the recipients (public keys); reading an object needs an identity (private key).
//
// age authenticates the ciphertext against tampering but, with public-key recipients, not
// who wrote it: whoever holds the recipient can write a valid object. The recipients are
// public by design; write access to the storage is what keeps others from adding objects.

// ErrWrongKey means an object or archive was encrypted with other keys (or none is given),
// or an object that must be encrypted is not.
var ErrWrongKey = errors.New("wrong or missing encryption key")

// ageMagic starts every age file in its binary form.
const ageMagic = "age-encryption.org/v1\n"

// Key is an archive's encryption keys; nil means the archive is not encrypted.
type Key = *KeySet

// KeySet holds the age recipients objects are encrypted to and the identities that decrypt
// them (none when this process only archives).
type KeySet struct {
	recipients []age.Recipient
	names      []string // the recipients' public keys, sorted
	identities []age.Identity
}

// ID names the key set as the archive's identity records it: the sorted recipients'
// public keys, comma-separated (public keys are safe to store and show).
func (k *KeySet) ID() string { return strings.Join(k.names, ",") }

// CanDecrypt reports whether the set holds an identity, which reading objects needs.
func (k *KeySet) CanDecrypt() bool { return len(k.identities) > 0 }

// LoadKeyFiles builds the key set from an age identity file (AGE-SECRET-KEY-1... lines, as
// written by age-keygen) and an age recipients file (age1... lines); either may be "".
// Objects are encrypted to the recipients file's keys when it is given, else to the
// identities' own public keys. "" for both means no encryption (nil, nil).
func LoadKeyFiles(identityFile, recipientFile string) (Key, error) {
	if identityFile == "" && recipientFile == "" {
		return nil, nil
	}
	var ids, rcpts []byte
	var err error
	if identityFile != "" {
		if ids, err = os.ReadFile(identityFile); err != nil {
			return nil, fmt.Errorf("read encryption identity file: %w", err)
		}
	}
	if recipientFile != "" {
		if rcpts, err = os.ReadFile(recipientFile); err != nil {
			return nil, fmt.Errorf("read encryption recipient file: %w", err)
		}
	}
	return ParseKeys(ids, identityFile, rcpts, recipientFile)
}

// ParseKeys parses age identities and recipients (either may be empty); the names are used
// in errors, never the key material.
func ParseKeys(identities []byte, identityName string, recipients []byte, recipientName string) (Key, error) {
	k := &KeySet{}
	if len(identities) > 0 {
		ids, err := age.ParseIdentities(bytes.NewReader(identities))
		if err != nil {
			return nil, fmt.Errorf("invalid age identity file %s: expected AGE-SECRET-KEY-1... lines as written by age-keygen", identityName)
		}
		for _, id := range ids {
			x, ok := id.(*age.X25519Identity)
			if !ok {
				return nil, fmt.Errorf("age identity file %s: only X25519 identities (AGE-SECRET-KEY-1...) are supported, which every age release reads", identityName)
			}
			k.identities = append(k.identities, x)
			if len(recipients) == 0 {
				k.addRecipient(x.Recipient())
			}
		}
	}
	if len(recipients) > 0 {
		rs, err := age.ParseRecipients(bytes.NewReader(recipients))
		if err != nil {
			return nil, fmt.Errorf("invalid age recipient file %s: expected age1... public keys, one a line", recipientName)
		}
		for _, r := range rs {
			x, ok := r.(*age.X25519Recipient)
			if !ok {
				return nil, fmt.Errorf("age recipient file %s: only X25519 recipients (age1...) are supported, which every age release reads", recipientName)
			}
			k.addRecipient(x)
		}
	}
	if len(k.recipients) == 0 {
		return nil, errors.New("no age identity or recipient found in the encryption key files")
	}
	slices.Sort(k.names)
	k.names = slices.Compact(k.names)
	return k, nil
}

func (k *KeySet) addRecipient(r *age.X25519Recipient) {
	k.recipients = append(k.recipients, r)
	k.names = append(k.names, r.String())
}

// decryptsFor reports whether one of the set's identities belongs to a recipient in names.
func (k *KeySet) decryptsFor(names []string) bool {
	for _, id := range k.identities {
		if slices.Contains(names, id.(*age.X25519Identity).Recipient().String()) {
			return true
		}
	}
	return false
}

// checkArchiveKey checks the configured key against the one an archive's identity records
// (recorded: the archive's sorted recipients, or "" when it is not encrypted). A writer
// must encrypt to exactly the archive's recipients; a reader needs an identity of one of
// them, or the same recipients.
func checkArchiveKey(recorded string, key Key, write bool) error {
	switch {
	case recorded == "" && key != nil:
		return fmt.Errorf("this archive is not encrypted: do not give an encryption key (encryption is chosen when an archive is created): %w", ErrWrongKey)
	case recorded != "" && key == nil:
		return fmt.Errorf("this archive is encrypted (to age recipients %s): give its identity with --encryption-key-file or KCBACKUP_ENCRYPTION_KEY_FILE: %w", recorded, ErrWrongKey)
	case recorded == "" || key.ID() == recorded:
		return nil
	case !write && key.decryptsFor(strings.Split(recorded, ",")):
		return nil
	}
	return fmt.Errorf("this archive is encrypted to the age recipients %s, not to the given ones (%s): give the archive's identity file, and its recipient file if it has several recipients: %w", recorded, key.ID(), ErrWrongKey)
}

// encryptTo starts an age file on w encrypted to the key's recipients.
func encryptTo(w io.Writer, k Key) (io.WriteCloser, error) {
	return age.Encrypt(w, k.recipients...)
}

// openEncryption looks at the start of an object and, for an age file, starts decrypting
// it. It fails closed: an age file without a key or identity, and a clear object when a
// key is given, are refused with ErrWrongKey. src records storage errors, so that they are
// never reported as corruption.
func openEncryption(br *bufio.Reader, src *errRecorder, name string, k Key) (io.Reader, error) {
	head, err := br.Peek(len(ageMagic))
	if err != nil && src.err != nil {
		return nil, fmt.Errorf("read %s: %w", name, src.err)
	}
	encrypted := string(head) == ageMagic
	switch {
	case !encrypted && k == nil:
		return br, nil
	case !encrypted:
		if bytes.HasPrefix(head, headerFramePrefix()) {
			return nil, fmt.Errorf("%s is not encrypted, but this archive's objects must be: %w", name, ErrWrongKey)
		}
		return nil, fmt.Errorf("%s: %w: not an age-encrypted kcbackup object", name, ErrCorrupt)
	case k == nil:
		return nil, fmt.Errorf("%s is encrypted (age) and no key was given: %w", name, ErrWrongKey)
	case !k.CanDecrypt():
		return nil, fmt.Errorf("%s is encrypted, and only the archive's recipients (public keys) were given: reading needs the identity (--encryption-key-file): %w", name, ErrWrongKey)
	}
	r, err := age.Decrypt(br, k.identities...)
	var noMatch *age.NoIdentityMatchError
	switch {
	case err == nil:
		return r, nil
	case src.err != nil:
		return nil, fmt.Errorf("read %s: %w", name, src.err)
	case errors.As(err, &noMatch):
		return nil, fmt.Errorf("%s is encrypted to other age recipients than the given identity's: %w", name, ErrWrongKey)
	}
	return nil, fmt.Errorf("%s: %w: %v", name, ErrCorrupt, err)
}

// errRecorder passes reads through and keeps the first error other than io.EOF: the
// storage's, which callers keep apart from corruption found in the bytes.
type errRecorder struct {
	r   io.Reader
	err error
}

func (e *errRecorder) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	if err != nil && err != io.EOF && e.err == nil {
		e.err = err
	}
	return n, err
}
