"""Streaming `multipart/form-data` for `POST /v1/files` and an upload's parts: the file part goes straight into a
capped blob writer.

The body is parsed as it arrives (python-multipart's streaming parser), so a 512 MB upload is never held in
memory, and reading stops at the first byte past the cap. Form fields other than the file are small and few.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from ..errors import InvalidRequest, TunelabError
from ..store.blobs import BlobWriter

MAX_FIELD_BYTES = 4096
MAX_PARTS = 16  # parts of any kind, the file included
MAX_HEADER_BYTES = 8192


class RequestTooLarge(TunelabError):
    code = "request_too_large"
    status = 413


@dataclass
class Upload:
    """What the form held: the file's name (as sent) and size, and the other fields."""

    filename: str | None = None
    fields: dict[str, str] = field(default_factory=dict)


class UploadParser:
    """Feed it the body chunk by chunk; the part named `file_field` is written to `writer`."""

    def __init__(self, content_type: str, writer: BlobWriter, file_field: str = "file",
                 expected: str = "a 'file' part and a 'purpose' field"):
        kind, options = parse_options_header(content_type)
        boundary = options.get(b"boundary")
        if kind != b"multipart/form-data" or not boundary:
            raise InvalidRequest(f"upload the file as multipart/form-data ({expected})", param=file_field)
        self.writer = writer
        self.file_field = file_field
        self.result = Upload()
        self._headers: dict[bytes, bytes] = {}
        self._field, self._value = b"", b""
        self._header_bytes = 0
        self._part_name: str | None = None
        self._is_file = False
        self._buffer = bytearray()
        self._parts = 0
        self._ended = False
        self._parser = MultipartParser(boundary, callbacks={
            "on_part_begin": self._part_begin, "on_header_field": self._header_field,
            "on_header_value": self._header_value, "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished, "on_part_data": self._part_data,
            "on_part_end": self._part_end, "on_end": self._end,
        })

    def feed(self, chunk: bytes) -> None:
        try:
            self._parser.write(chunk)
        except MultipartParseError as exc:
            raise InvalidRequest(f"the upload is not valid multipart/form-data: {exc}",
                                 param=self.file_field) from None

    def finish(self) -> Upload:
        try:
            self._parser.finalize()
        except MultipartParseError as exc:
            raise InvalidRequest(f"the upload is not valid multipart/form-data: {exc}",
                                 param=self.file_field) from None
        if not self._ended:  # the closing boundary never came: the body was cut short
            raise InvalidRequest("the upload ended before its closing boundary; nothing was stored",
                                 param=self.file_field)
        return self.result

    # --- parser callbacks ---

    def _part_begin(self) -> None:
        self._parts += 1
        if self._parts > MAX_PARTS:
            raise InvalidRequest(f"too many parts in the upload (at most {MAX_PARTS})", param=self.file_field)
        self._headers, self._field, self._value, self._header_bytes = {}, b"", b"", 0

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._count_header(end - start)
        self._field += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._count_header(end - start)
        self._value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._field.lower()] = self._value
        self._field, self._value = b"", b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        self._part_name = options.get(b"name", b"").decode("utf-8", "replace")
        self._is_file = self._part_name == self.file_field
        if self._is_file:
            if self.result.filename is not None:
                raise InvalidRequest("send one file per upload", param=self.file_field)
            self.result.filename = options.get(b"filename", b"").decode("utf-8", "replace")
        self._buffer.clear()

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._is_file:
            self.writer.write(data[start:end])
            return
        self._buffer += data[start:end]
        if len(self._buffer) > MAX_FIELD_BYTES:
            raise RequestTooLarge(f"the form field {self._part_name!r} is longer than {MAX_FIELD_BYTES} bytes",
                                  param=self._part_name)

    def _part_end(self) -> None:
        if not self._is_file and self._part_name:
            self.result.fields[self._part_name] = self._buffer.decode("utf-8", "replace")

    def _end(self) -> None:
        self._ended = True

    def _count_header(self, n: int) -> None:
        self._header_bytes += n
        if self._header_bytes > MAX_HEADER_BYTES:
            raise InvalidRequest("a part of the upload has oversized headers", param=self.file_field)
