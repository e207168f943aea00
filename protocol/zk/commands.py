"""Command, reply, event and table codes of the ZK protocol, named as ZKTeco's SDK names them."""

from enum import IntEnum, IntFlag


class Command(IntEnum):
    """What a packet asks for; also DATA and PREPARE_DATA, which travel both ways."""

    DB_RRQ = 7  # read a table (templates) through the buffer
    USER_WRQ = 8  # write one user record (upsert by uid)
    USERTEMP_RRQ = 9  # read a table (users) through the buffer
    USERTEMP_WRQ = 10
    OPTIONS_RRQ = 11  # read one option: "name\0" -> "name=value\0"
    OPTIONS_WRQ = 12  # write one option: "name=value\0"
    ATTLOG_RRQ = 13  # read the attendance log through the buffer
    CLEAR_DATA = 14
    CLEAR_ATTLOG = 15
    DELETE_USER = 18  # u16 uid
    DELETE_USERTEMP = 19  # u16 uid, s8 finger index
    CLEAR_ADMIN = 20
    UNLOCK = 31
    CLEAR_OPLOG = 33
    OPLOG_RRQ = 34
    GET_FREE_SIZES = 50  # counts and capacities
    ENABLE_CLOCK = 57
    STARTVERIFY = 60
    STARTENROLL = 61
    CANCELCAPTURE = 62
    STATE_RRQ = 64
    WRITE_LCD = 66
    CLEAR_LCD = 67
    GET_PINWIDTH = 69
    DOORSTATE_RRQ = 75
    VERIFY_WRQ = 79
    VERIFY_RRQ = 80
    TMP_WRITE = 87  # move an uploaded template from the buffer into place
    GET_USERTEMP = 88  # read one template: u16 uid, s8 finger index (undocumented; pyzk uses it)
    SAVE_USERTEMPS = 110  # store users and templates uploaded to the buffer (undocumented; pyzk uses it)
    CHECKSUM_BUFFER = 119
    DEL_FPTMP = 134  # delete one template by user id: 24-byte user id, u8 finger index
    GET_TIME = 201
    SET_TIME = 202
    REG_EVENT = 500  # register for real-time events (u32 mask); also the command of every event
    CONNECT = 1000
    EXIT = 1001
    ENABLEDEVICE = 1002
    DISABLEDEVICE = 1003
    RESTART = 1004
    POWEROFF = 1005
    SLEEP = 1006
    RESUME = 1007
    CAPTUREFINGER = 1009
    TEST_TEMP = 1011
    CAPTUREIMAGE = 1012
    REFRESHDATA = 1013  # make written data take effect
    REFRESHOPTION = 1014
    TESTVOICE = 1017
    GET_VERSION = 1100
    CHANGE_SPEED = 1101
    AUTH = 1102  # the comm key, scrambled with the session id (protocol.zk.commkey)
    PREPARE_DATA = 1500  # a buffered transfer of u32 size bytes follows
    DATA = 1501  # one piece of a buffered transfer, or a whole answer inline
    FREE_DATA = 1502  # release the device's transfer buffer
    PREPARE_BUFFER = 1503  # prepare a table for a buffered read (CMD_DATA_WRRQ in the SDK)
    READ_BUFFER = 1504  # read one chunk of the prepared table (CMD_DATA_RDY in the SDK)


class ReplyCode(IntEnum):
    """Reply codes a device answers with (besides DATA and PREPARE_DATA)."""

    ACK_OK = 2000
    ACK_ERROR = 2001
    ACK_DATA = 2002
    ACK_RETRY = 2003
    ACK_REPEAT = 2004
    ACK_UNAUTH = 2005  # a comm key is needed, or the one given was wrong
    ACK_ERROR_DATA = 0xFFFB
    ACK_ERROR_INIT = 0xFFFC
    ACK_ERROR_CMD = 0xFFFD
    ACK_UNKNOWN = 0xFFFF  # the device does not know the command


class EventFlag(IntFlag):
    """Real-time event kinds: the mask REG_EVENT registers, and the code each event carries."""

    ATTLOG = 1
    FINGER = 2
    ENROLLUSER = 4
    ENROLLFINGER = 8
    BUTTON = 16
    UNLOCK = 32
    VERIFY = 128
    FPFTR = 256
    ALARM = 512


class Table(IntEnum):
    """Which table a PREPARE_BUFFER reads: its inner command and its ``fct`` code (pyzk's FCT_*)."""

    ATTLOG = 1
    FINGERTMP = 2
    OPLOG = 4
    USER = 5
    SMS = 6
    UDATA = 7
    WORKCODE = 8


class Privilege(IntEnum):
    USER = 0
    ENROLLER = 2
    MANAGER = 6
    ADMIN = 14


def name_of(code: int) -> str:
    """A command or reply code as a person reads it: ``ACK_OK``, ``CONNECT``, or ``code 1234``."""
    for enum in (Command, ReplyCode):
        try:
            return enum(code).name
        except ValueError:
            pass
    return f"code {code}"
