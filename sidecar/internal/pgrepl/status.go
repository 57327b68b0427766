package pgrepl

import (
	"encoding/binary"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/kcbackup/kcbackup/walarchive"
)

// EncodeStandbyStatus builds a Standby Status Update message ('r'). Unlike pglogrepl's
// helper, a zero flush position is sent as zero: kcbackup must never acknowledge WAL it
// has not archived, and "nothing archived yet" is a real state.
func EncodeStandbyStatus(write, flush, apply walarchive.LSN, now time.Time, replyRequested bool) []byte {
	b := make([]byte, 0, 34)
	b = append(b, 'r')
	b = binary.BigEndian.AppendUint64(b, uint64(write))
	b = binary.BigEndian.AppendUint64(b, uint64(flush))
	b = binary.BigEndian.AppendUint64(b, uint64(apply))
	b = binary.BigEndian.AppendUint64(b, uint64(now.Sub(walarchive.PostgresEpoch).Microseconds()))
	if replyRequested {
		b = append(b, 1)
	} else {
		b = append(b, 0)
	}
	return b
}

// SendStandbyStatus sends a status update on a connection in COPY BOTH mode.
func SendStandbyStatus(conn *pgconn.PgConn, write, flush walarchive.LSN, now time.Time) error {
	buf, err := (&pgproto3.CopyData{Data: EncodeStandbyStatus(write, flush, flush, now, false)}).Encode(nil)
	if err != nil {
		return err
	}
	if err := conn.Frontend().SendUnbufferedEncodedCopyData(buf); err != nil {
		return fmt.Errorf("send standby status (flush %s): %w", flush, err)
	}
	return nil
}
